"""Sub-FM construction and layer-level distillation (FedPFT, spec §2–§3)."""

import warnings

# torch.cuda imports the deprecated `pynvml` shim that flgo depends on; its warning is noise for every command.
warnings.filterwarnings("ignore", message="The pynvml package is deprecated")
