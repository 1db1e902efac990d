"""Root only: the monitor reads real HTB class stats and TCP_INFO in our own namespace pair; the loop runs on them."""

from __future__ import annotations

import os
import shutil
import socket
import time

import pytest

from shaping.spec import tenant_spec
from tests.monitor.conftest import scenario

pytestmark = pytest.mark.root


@pytest.fixture
def pair():
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")
    if shutil.which("ethtool") is None:  # offloads off: HTB and the monitor count wire-sized packets
        pytest.skip("needs ethtool to turn the veth offloads off (apt-get install ethtool)")
    from shaping.enforce.testing import netns_pair

    with netns_pair("fsm-mon", subnets=(35,), offloads=False) as p:
        yield p


def _ns_socket(ns: str, kind: int) -> socket.socket:
    from pyroute2.netns import create_socket

    return create_socket(ns, socket.AF_INET, kind, flags=0)


def test_monitor_reads_htb_class_stats_and_tcp_rtt(pair, tmp_path):
    from pyroute2 import IPRoute

    from shaping.monitor import Monitor, NetlinkClassStats, SockDiagRtt

    spec = tenant_spec(scenario(subnet=35, paths=1), 0)
    link = pair.a_links[0]
    with IPRoute(netns=pair.a, flags=0) as ipr:
        idx = ipr.link_lookup(ifname=link)[0]
        # every packet into 1:10 (the HTB default), 2 Mbit/s: a UDP burst queues and overflows its pfifo
        ipr.tc("add", "htb", index=idx, handle="1:", default=0x10)
        ipr.tc("add-class", "htb", index=idx, handle="1:1", parent="1:", rate="2mbit", ceil="2mbit")
        ipr.tc("add-class", "htb", index=idx, handle="1:10", parent="1:1", rate="2mbit", ceil="2mbit")
        ipr.tc("add", "pfifo", index=idx, handle="10:", parent="1:10", limit=50)
    classids = (0x10010, 0x10011, 0x10012)
    rx = _ns_socket(pair.b, socket.SOCK_DGRAM)
    tx = _ns_socket(pair.a, socket.SOCK_DGRAM)
    listener = _ns_socket(pair.b, socket.SOCK_STREAM)
    client = _ns_socket(pair.a, socket.SOCK_STREAM)
    mon = Monitor(spec, NetlinkClassStats([link], netns=pair.a), classids, rtt=SockDiagRtt(netns=pair.a))
    try:
        rx.bind((pair.b_addrs[0], 27015))
        for _ in range(300):  # 300 x 1000 B in a burst, bounded
            tx.sendto(b"x" * 1000, (pair.b_addrs[0], 27015))
        listener.bind((pair.b_addrs[0], 9000))
        listener.listen()
        client.connect((pair.b_addrs[0], 9000))
        conn, _ = listener.accept()
        for _ in range(5):
            client.sendall(b"y" * 2000)
            conn.recv(65536)
        time.sleep(0.3)
        o = mon.sample()
        conn.close()
        # the struct-decoded reader (FastStats) and pyroute2's full decoder read the same counters
        slow = NetlinkClassStats([link], netns=pair.a, fast=False)
        fast = NetlinkClassStats([link], netns=pair.a)
        assert fast._fast is not None and slow._fast is None
        assert fast.read_classes()[0x10010].bytes == slow.read_classes()[0x10010].bytes > 0
        assert fast.read_interfaces()[link].tx_bytes == slow.read_interfaces()[link].tx_bytes > 0
        fast.close()
        slow.close()
    finally:
        for s in (rx, tx, listener, client):
            s.close()
        mon.close()
    counters = o.info
    m = o.metrics
    # HTB sent the fifo's 50 packets and what drained while the burst came (not all 300) out of 1:10,
    # what the interface sent too, and dropped the overflow
    sent_bytes = m.delivered_mbps[0].item() * o.interval_s * 1e6 / 8
    assert 50 * 1000 < sent_bytes < 250 * 1000, counters
    assert m.delivered_mbps[0].item() == pytest.approx(counters["interfaces"][link]["tx_mbps"], rel=0.1)
    assert m.loss[0].item() > 0.2, "a 300-packet burst into a 50-packet fifo at 2 Mbit/s must drop"
    assert m.offered_mbps[0].item() > m.delivered_mbps[0].item()
    assert counters["overlimits"][0] > 0
    # TCP_INFO of the trades connection (tcp 9000 from the VM's address) gave its delay
    assert counters["delay_source"][1] == "tcp_info" and counters["sockets"][1] >= 1
    assert 0 < m.delay_mean_ms[1].item() < 1000


def test_control_loop_on_the_kernel_backend(pair):
    import shutil

    if shutil.which("nft") is None:
        pytest.skip("nft is not installed")
    from shaping.baselines import static_priority_plan
    from shaping.control import ControlLoop, KernelBackend, KernelSetup, LoopConfig, StaticPolicy, make_enforcer
    from shaping.monitor import Monitor, NetlinkClassStats

    spec = tenant_spec(scenario(subnet=35, paths=1), 0)
    enforcer, classids = make_enforcer(spec, KernelSetup((pair.a_links[0],), pair.a))
    backend = KernelBackend(spec, Monitor(spec, NetlinkClassStats([pair.a_links[0]], netns=pair.a), classids),
                            enforcer, teardown_on_close=True)  # fmt: skip
    rules = static_priority_plan(spec)
    loop = ControlLoop(backend, StaticPolicy(spec, rules), rules, config=LoopConfig(interval_s=0.05))
    tx = _ns_socket(pair.a, socket.SOCK_DGRAM)
    seen = []
    try:
        loop.step()  # applies the rules: HTB classes 1:10.. now exist
        for _ in range(3):
            for _ in range(50):
                tx.sendto(b"z" * 500, (pair.b_addrs[0], 27015))
            time.sleep(0.05)
            seen.append(loop.step())
    finally:
        tx.close()
        loop.close()
    # the game class (udp 27015 from the VM) was classified into its own HTB class and measured
    game = [r.plan.classes[0].rate_mbps for r in seen]
    assert len(loop.history) == 4 and backend.applied == 4 and game == [rules.classes[0].rate_mbps] * 3
    delivered = [loop.metrics.value("fedshape_class_delivered_bytes_per_second", tenant=spec.name, **{"class": c.name})
                 for c in spec.classes]  # fmt: skip
    assert delivered[0] is not None and delivered[0] > 0.1e6 / 8, delivered
    assert delivered[2] == 0.0


def test_probes_run_inside_the_tenant_namespace(pair):
    from shaping.monitor import ProbeScheduler, UdpEchoProbe, UdpEchoServer

    with UdpEchoServer(pair.b_addrs[0], 7007, sock=_ns_socket(pair.b, socket.SOCK_DGRAM)):
        # the address is only reachable from namespace a: samples prove the probe thread entered it
        sched = ProbeScheduler({0: [UdpEchoProbe(pair.b_addrs[0], 7007, timeout_s=1.0)]}, period_s=0.02,
                               netns=pair.a).start()  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and len(sched.samples(0.0)[0]) < 3:
                time.sleep(0.05)
        finally:
            sched.close()
    assert sched.error == ""
    samples = sched.samples(0.0)[0]
    assert len(samples) >= 3 and all(0 < s < 1000 for s in samples)
