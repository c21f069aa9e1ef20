"""`python -m src.baselines`, kept for users' scripts: the tool is `python -m src.evaluation.baselines`."""
import runpy

if __name__ == "__main__":
    runpy.run_module("src.evaluation.baselines", run_name="__main__", alter_sys=True)
