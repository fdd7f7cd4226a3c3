"""Bytes on the wire (issue: honest communication): each selected client receives the adapter plus every sub-FM
change made since the version it holds, never more than the compressed FFNs in full."""

from __future__ import annotations

import pytest
import torch

from federated_proxy_finetuning.communication import FFNShape, SubFMSync, ffn_shapes, model_bytes
from sub_model_construct.families import family_of
from sub_model_construct.sub_model import build_sub_model
from tests.tiny import make_text_fm

# a compressed layer of hidden size 4 and FFN width 6: a neuron is an input row (4) + its bias (1) + an output
# column (4) = 9 parameters; shared: output bias (4) + LayerNorm (4 + 4) = 12; all of it: 6 * 9 + 12 = 66
SHAPE = FFNShape(per_neuron=9, shared=12, width=6)


def test_hand_computed_case_stale_clients_and_a_client_never_selected_again():
    sync = SubFMSync({1: SHAPE, 2: SHAPE}, num_clients=3, element_size=4)
    # every client starts at version 0: nothing to send before the first alignment
    assert [sync.send(c) for c in (0, 1)] == [0, 0]

    sync.record_alignment({1: torch.tensor([0, 1]), 2: torch.tensor([5])})  # version 1
    # client 1 is selected right after the first alignment: layer 1 {0,1} -> 2*9+12, layer 2 {5} -> 9+12
    assert sync.send(1) == 4 * ((2 * 9 + 12) + (9 + 12))

    sync.record_alignment({1: torch.tensor([1, 2]), 2: torch.tensor([5])})  # version 2
    # client 0 missed both alignments: layer 1 gets the union {0,1,2} -> 3*9+12, layer 2 {5} -> 9+12 (once)
    assert sync.parameters_to_send(0) == (3 * 9 + 12) + (9 + 12)
    # client 1 holds version 1: only the second alignment's neurons
    assert sync.parameters_to_send(1) == (2 * 9 + 12) + (9 + 12)
    assert sync.send(0) == 4 * ((3 * 9 + 12) + (9 + 12))
    assert sync.send(0) == 0  # up to date now
    # client 2 is never selected again: it is never charged, and its version stays 0
    assert sync.client_version == [2, 1, 0]


def test_never_more_than_the_compressed_ffns_in_full():
    sync = SubFMSync({1: SHAPE}, num_clients=1, element_size=1)
    for idx in ([0, 1, 2, 3], [2, 3, 4, 5], [0, 5]):
        sync.record_alignment({1: torch.tensor(idx)})
    assert sync.parameters_to_send(0) == SHAPE.full == 66


def test_state_round_trip_and_refusals():
    sync = SubFMSync({1: SHAPE}, num_clients=2, element_size=4)
    sync.record_alignment({1: torch.tensor([3])})
    sync.send(1)
    restored = SubFMSync({1: SHAPE}, num_clients=2, element_size=4)
    restored.load_state_dict(sync.state_dict())
    assert restored.version == 1 and restored.client_version == [0, 1]
    assert restored.parameters_to_send(0) == sync.parameters_to_send(0) == 9 + 12
    with pytest.raises(ValueError, match="different number of clients"):
        SubFMSync({1: SHAPE}, num_clients=3, element_size=4).load_state_dict(sync.state_dict())
    with pytest.raises(ValueError, match="not compressed layers"):
        sync.record_alignment({0: torch.tensor([0])})


def test_shapes_and_model_bytes_read_from_a_real_sub_fm(tmp_path):
    from transformers import AutoModel

    fm = AutoModel.from_pretrained(make_text_fm(tmp_path / "fm"))
    sub = build_sub_model(fm, [0], intermediate_rank=8)
    family = family_of(sub.config)
    shapes = ffn_shapes(sub, family, [1])
    d = sub.config.hidden_size
    assert shapes[1] == FFNShape(per_neuron=2 * d + 1, shared=3 * d, width=8)
    # the whole backbone state dict (a bare backbone has no head)
    expected = sum(t.numel() * t.element_size() for t in sub.state_dict().values())
    assert expected > 4 * sum(p.numel() for p in sub.encoder.parameters())
    assert model_bytes(sub, family.head) == expected
