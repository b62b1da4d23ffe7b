"""Python side of the kernel: compile, attach, maps, test-run harness, preflight."""
