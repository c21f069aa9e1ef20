"""`python -m src.benchmark_lists`, kept for users' scripts: the tool is `python -m src.data.benchmark_lists`."""
import runpy

if __name__ == "__main__":
    runpy.run_module("src.data.benchmark_lists", run_name="__main__", alter_sys=True)
