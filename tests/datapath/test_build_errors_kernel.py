"""The verifier's refusal carries the verifier's lines (the program is
loaded, so this needs root)."""
from __future__ import annotations

import pytest

from datapath.errors import MicrosegError
from datapath.loader import FastPath


def test_verifier_error_carries_verifier_lines():
    # Reads packet data without a bounds check: the verifier must refuse it.
    text = r"""
#include <uapi/linux/pkt_cls.h>
int tc_ingress(struct __sk_buff *skb) {
    unsigned char *p = (void *)(long)skb->data;
    return p[100];
}
"""
    from datapath.enums import Direction
    with pytest.raises(MicrosegError) as ei:
        FastPath(text=text, programs={Direction.DIR_INGRESS: "tc_ingress"})
    msg = str(ei.value)
    assert msg.startswith("BPF verifier rejected tc_ingress")
    assert "invalid access to packet" in msg
