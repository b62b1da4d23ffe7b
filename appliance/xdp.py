"""The XDP blocklist on the gateway's interfaces, kept in step with the
policy's `blocklist:` (used by `microseg up`, `policy apply` and `run`)."""
from __future__ import annotations


def sync_blocklist(cidrs: list[str], ifaces: list[str], netns: str | None, force_no_bloom: bool = False) -> str:
    """Make the XDP blocklist on ``ifaces`` hold ``cidrs``: a new program
    with the list, attached in place of ours (one netlink replace per
    interface), or ours removed when the list is empty."""
    from datapath import attach
    from datapath.blocklist import Blocklist

    if not cidrs:
        removed = [i for i in ifaces if attach.detach_xdp(i, netns)]
        return f"XDP blocklist: none{' (removed from ' + ', '.join(removed) + ')' if removed else ''}"
    from datapath.blocklist import BlocklistConfig
    bl = Blocklist(BlocklistConfig(force_no_bloom=force_no_bloom))
    try:
        st = bl.apply(cidrs)
        for i in ifaces:
            attach.attach_xdp(bl.prog_fd, i, netns)
    finally:
        bl.close()   # the attached program holds its maps
    return (f"XDP blocklist: {st.prefixes} prefixes ({bl.path}) on {', '.join(ifaces)}"
            + "".join(f"; {n}" for n in st.notes))
