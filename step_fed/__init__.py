"""What the coordinator and the nodes share about federating, whatever carries the messages:
the wire protocol (round config, metric names, error codes), the update and broadcast codecs,
node identity keys, app signatures, the secret RNG for DP noise, and the ``Transport`` the round
loop talks through. Builds on step_model; imports neither node nor coordinator."""
