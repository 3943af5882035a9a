"""`python -m streaming_service` is the same as the `streaming-service` command."""

from streaming_service.cli import main

raise SystemExit(main())
