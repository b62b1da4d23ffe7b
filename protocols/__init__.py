"""Sans-IO application protocol parsers and the plugin registry.

Each parser takes bytes and a direction and returns events
(``receive_data``), with every limit a named constant; none does I/O or
knows of BPF, asyncio or the engine, so a pcap, a socket or the kernel's
ring buffer can feed it alike. ``api.py`` is the plugin API (parser,
probe, kernel signatures, the per-direction stream buffer), ``registry.py``
finds built-in and installed plugins.

Bottom layer: imports nothing from datapath, slowpath or appliance.
"""
