"""``python -m benchmarks ...`` is ``python -m benchmarks.run ...``; the whole published CPU benchmark is

    python -m benchmarks.suite cpu --seeds 0 1 2 --workers 2 --logdir runs/cpu

(every task x algorithm x seed, then ``benchmarks.vs_trl``, ``throughput``, ``env_overhead`` and
``reward_speed``, then ``benchmarks.report``, which rewrites ``benchmarks/results/cpu/`` and
the results block of ``docs/benchmarks.md``).
The other scripts: ``python -m benchmarks.report runs/``, ``python -m benchmarks.vs_trl`` and
``python -m benchmarks.quickstart``. Every script's options are a dataclass ``Args`` parsed by ``tyro``;
``--help`` lists them.
"""

from benchmarks.run import main

if __name__ == "__main__":
    main()
