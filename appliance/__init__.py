"""CLI, configuration, lab topology, and the daemon wiring datapath + slowpath."""
