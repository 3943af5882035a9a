"""Stand-ins for `aws`, `ssh`, `scp`, `docker`, `curl`, `sudo` and `cloud-init` that deploy.sh runs in tests.

They keep one JSON state file (instances, static IPs, firewall, images, the container, faults to
inject) and append every call to a JSON-lines log; `world.World` sets them up and runs deploy.sh.
"""
