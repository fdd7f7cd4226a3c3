"""federated_proxy_finetuning/methods.py: what each method's clients train, decided by objects, and the paper's name
of a run (spec §4.13) from its method, whether its client model was distilled and whether it aligned."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from federated_proxy_finetuning.methods import EMULATOR, FM_ITSELF, METHODS, SUB_FM
from scripts.summarize import paper_name
from sub_model_construct.cli import UsageError


def test_each_method_is_its_client_model_and_alignment():
    assert (METHODS["pft"].client, METHODS["pft"].aligns) == (SUB_FM, True)
    assert (METHODS["peft"].client, METHODS["peft"].aligns) == (FM_ITSELF, False)
    assert (METHODS["fedot"].client, METHODS["fedot"].aligns) == (EMULATOR, False)
    assert [m.client.label for m in METHODS.values()] == ["sub-FM", "FM", "emulator"]
    assert (SUB_FM.needs_folder, EMULATOR.needs_folder, FM_ITSELF.reads_folder) == (True, False, False)


@pytest.mark.parametrize(
    ("summary", "name"),
    [
        ({"method": "peft", "client_model_distilled": None, "aligning": False}, "FedPETuning"),
        ({"method": "fedot", "client_model_distilled": True, "aligning": False}, "FedOT"),
        ({"method": "fedot", "client_model_distilled": False, "aligning": False}, "FedOT w/o KD"),
        ({"method": "pft", "client_model_distilled": True, "aligning": True}, "FedPFT"),
        ({"method": "pft", "client_model_distilled": True, "aligning": False}, "FedPFT_B"),
        ({"method": "pft", "client_model_distilled": False, "aligning": True}, "FedPFT_D"),
        ({"method": "pft", "client_model_distilled": False, "aligning": False}, "FedPFT_N"),
        ({"method": "pft"}, "pft"),  # an older summary without the fields keeps the method name
        ({"method": "other"}, "other"),
    ],
)
def test_paper_names(summary, name):
    assert paper_name(summary) == name


def test_folder_names_tuned_layers_and_refusals():
    assert FM_ITSELF.folder_name("/m/all-MiniLM-L6-v2/", "/x/sub") == "all-MiniLM-L6-v2"
    assert SUB_FM.folder_name("/m/fm", "/r/models/minilm/sub-distilled/") == "sub-distilled"
    assert EMULATOR.folder_name("/m/fm", None) == "fedot-fm"
    config = SimpleNamespace(num_hidden_layers=4, layers_retained=[0, 3])
    assert FM_ITSELF.tuned_layers(config) == SUB_FM.tuned_layers(config) == [0, 1, 2, 3]
    assert EMULATOR.tuned_layers(config) == [0, 3]  # FedOT tunes its adapters only
    SUB_FM.check_built("pft", "sub", drops_layers=False)
    EMULATOR.check_built("fedot", "emu", drops_layers=True)
    with pytest.raises(UsageError, match="needs an FFN-compressed sub-FM"):
        SUB_FM.check_built("pft", "emu", drops_layers=True)
    with pytest.raises(UsageError, match="needs a layer-drop emulator"):
        EMULATOR.check_built("fedot", "sub", drops_layers=False)
