"""``python -m benchmarks ...`` is ``python -m benchmarks.run ...``; the whole published CPU benchmark is

    python -m benchmarks --suite cpu --seeds 0 1 2

(every task x algorithm x seed, then ``benchmarks.vs_trl``, then ``benchmarks.report runs/``).
The other scripts: ``python -m benchmarks.report runs/``, ``python -m benchmarks.vs_trl`` and
``python -m benchmarks.quickstart``.
"""

from benchmarks.run import main

if __name__ == "__main__":
    main()
