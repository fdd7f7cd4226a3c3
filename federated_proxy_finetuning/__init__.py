"""Federated proxy fine-tuning with neuron-level alignment (FedPFT, spec §4–§5)."""

import warnings

# torch.cuda imports the deprecated `pynvml` shim that flgo depends on; its warning is noise for every command.
warnings.filterwarnings("ignore", message="The pynvml package is deprecated")
