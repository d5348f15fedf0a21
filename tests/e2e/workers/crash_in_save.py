"""launchers/pretrain.py with a crash injected into one checkpoint save, on every rank.

DeepSpeed writes its files for the tag named by CRASH_IN_SAVE_OF, then every process dies
(as a node failure would) before `meta.json` and `latest` can be written.
"""
import os
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, ROOT)

from megatron_sffn.training.engine import TrainEngine  # noqa: E402

_original_save = TrainEngine.save_checkpoint


def _crashing_save(self, save_dir, tag, client_state):
    _original_save(self, save_dir, tag, client_state)
    if tag == os.environ["CRASH_IN_SAVE_OF"]:
        print(f"crash injected while saving {tag}", flush=True)
        os._exit(17)


TrainEngine.save_checkpoint = _crashing_save
sys.argv = [os.path.join(ROOT, "launchers", "pretrain.py")] + sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
