"""infra: what every layer of textenv stands on, and nothing about RL.

- :mod:`infra.storage`: the cache root, the one atomic writer, build-once cache directories, JSONL reading.
- :mod:`infra.engine`: the DeepSpeed engine every trainer shares (precision, ZeRO config, process group,
  pickle-free checkpoint reads).
- :mod:`infra.corpora`: the offline corpora (drugs.com reviews, Shakespeare), one reader each.

It imports nothing of ours; ``rewards``, ``textenv``, ``agents`` and ``benchmarks`` may all import it.
"""
