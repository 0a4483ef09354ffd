"""scripts/gpu_check.py runs its compile stage without a GPU (the rest needs one)."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_gpu_check_compiles_without_a_gpu():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gpu_check.py"), "--allow-no-gpu",
                           "--batches", "1", "--models", "resnet56-random97", "--arch", "sm_86"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "compiled for sm_86" in proc.stdout and "['sm_86', 'compute_86']" in proc.stdout
