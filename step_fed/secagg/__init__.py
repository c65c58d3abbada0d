"""Secure aggregation after SecAgg+ (Bell et al., CCS 2020): the coordinator learns only the sum
of the institutions' updates.

Each module is one piece of the protocol, transport-free (numpy and ``cryptography``): the
shared quantisation grid (``grid``), the neighbour graph (``graph``), per-round key pairs signed
with the node's identity key (``keys``), the masks' pseudo-random generator (``prg``), Shamir
sharing of the secrets that let the survivors unmask (``shamir``), and the stages of a round on
each side (``client``, ``server``).
"""
