"""`python -m src.history`, kept for users' scripts: the tool is `python -m src.training.history`."""
import runpy

if __name__ == "__main__":
    runpy.run_module("src.training.history", run_name="__main__", alter_sys=True)
