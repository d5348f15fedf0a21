"""What is on disk under a folder, to prove a refused input changed nothing there."""
import hashlib
import os


def snapshot(root):
    """Every file under root with the hash of its bytes."""
    found = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return found
