"""`step-sim`: the federation's ServerApp and ClientApp run on one machine by Flower's simulation
engine (a simulation SuperLink started by hand, Ray underneath)."""
