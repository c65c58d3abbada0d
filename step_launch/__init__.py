"""Starting and watching the processes of a federation: children in their own sessions, a
watchdog that outlives a SIGKILLed launcher, free ports, and the ``flwr`` CLI's environment and
output. Used by step-sim, step-coord and step-node."""
