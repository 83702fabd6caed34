import socket

from service.local_ports import _ephemeral_start, free_port


def test_free_port_is_outside_the_ephemeral_range_and_ray_worker_ports():
    port = free_port()
    assert 19999 < port < _ephemeral_start()


def test_free_port_is_bindable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port()))


def test_free_port_never_repeats_a_port_it_gave_out():
    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)
