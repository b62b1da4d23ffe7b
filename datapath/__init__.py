"""The kernel side, in Python: the BPF C assembled and compiled with BCC,
loaded, attached to TC, its maps read and written.

bpf(2) calls and uapi constants (bpfsys.py), the one compile (compile.py),
enums and bit flags read from the C headers (enums.py, source.py), the
FastPath with its BPF_PROG_TEST_RUN harness (loader.py), attach and pins,
pinned state and namespace ownership, the policy model, checks, compiler
and atomic apply, the settings and the guarded YAML loader every file goes
through, kernel probes and preflight, sessions, counters, pressure and the
sweeper.

May import protocols (for the plugins' kernel signatures); never slowpath
or appliance.
"""
