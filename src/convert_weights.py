"""`python -m src.convert_weights`, kept for users' scripts: the tool is `python -m src.models.convert_weights`."""
import runpy

if __name__ == "__main__":
    runpy.run_module("src.models.convert_weights", run_name="__main__", alter_sys=True)
