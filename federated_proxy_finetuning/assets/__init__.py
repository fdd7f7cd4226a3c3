"""Builders of the embedded datasets (ARCHITECTURE §4, ASSETS.md) from files installed by package managers.
scripts/prepare_assets.py is the command line over them; scripts/fetch_assets.sh calls it.

- common.py: the seed, the asset version and its marker, saving a DatasetDict, seeded splits and orders
- bbc.py: BBC News (bbc, bbc-pairs, bbc-corpus)
- wiki.py: Wikipedia's vital-article summaries (wiki-topics, wiki-pairs, wiki-corpus)
- images.py: MNIST-5k and Fashion-MNIST
"""
