"""Measuring what the method costs: the client-cost benchmark and the round profile. scripts/benchmark.py and
scripts/profile_round.py are the command lines over it.

- models.py: the benchmark's models, built from the family table: a random-weight FM of a given shape, the client
  models (LoRA on the layers each method tunes) and a batch of the family's modality
- flops.py: the analytic FLOP ratios of the sub-FM and the emulator to the FM (encoders and decoder LMs), and the
  FFNs' share of the FM's FLOPs
- timing.py: timed training steps and eval forwards, interleaved across models; torch.profiler's operators by group
- memory.py: the peak memory of one client's training step, each model in a fresh process
- setting.py: one benchmark setting (FM, sub-FM, emulator) measured side by side, with the server's part of a round
- report.py: the benchmark's markdown
- round_parts.py: the round profile's pure helpers: a round's wall time by part, suite-against-plain comparisons
- round_runs.py: the round profile's measurements on the demo's FedPFT run
"""
