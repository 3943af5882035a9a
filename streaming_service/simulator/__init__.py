"""A protocol-faithful local Schwab for the demo and the tests: REST + streamer, simulated market."""

from streaming_service.simulator.market import Event, SimulatedMarket
from streaming_service.simulator.rest import write_token_file
from streaming_service.simulator.server import SchwabSimulator

__all__ = ["Event", "SchwabSimulator", "SimulatedMarket", "write_token_file"]
