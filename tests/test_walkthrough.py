"""The README's walkthrough, run top to bottom as written (a subprocess per command, in a fresh folder), each
command's stated output checked against what it prints. The block sits between the <!-- walkthrough --> markers;
a command is a line that is not a comment (a trailing backslash continues it); the "# " lines under it are its
expected output: every fragment between "..." must appear, in order, in what it prints (stdout and stderr); a
trailing "(N s)" is the time it took on 2 cores, not checked here (times are for a benchmark, not a test)."""
import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def walkthrough(readme=ROOT / "README.md"):
    """-> [(command, [expected fragments, one list per line])] of the README's walkthrough block."""
    text = readme.read_text()
    block = text.split("<!-- walkthrough -->")[1]
    body = re.search(r"```bash\n(.*?)```", block, re.S).group(1)
    steps, cont = [], False
    for line in body.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            want = re.sub(r"\s*\(\d+ s\)\s*$", "", line[1:].strip())
            if want and steps:
                steps[-1][1].append([f for f in re.split(r"(?:^|\s)\.\.\.(?:\s|$)", want) if f])
        elif cont:
            steps[-1] = (steps[-1][0] + " " + line.strip().rstrip("\\").strip(), steps[-1][1])
        else:
            steps.append((re.sub(r"\s+#.*$", "", line).rstrip("\\").strip(), []))
        cont = line.rstrip().endswith("\\") and not line.startswith("#")
    return steps


def test_the_walkthrough_is_parsed_as_written():
    steps = walkthrough()
    assert len(steps) >= 12 and all(cmd.startswith(("python ", "echo ")) for cmd, _ in steps)
    assert all(want for _, want in steps), [cmd for cmd, want in steps if not want]  # every command says its output
    made = " ".join(cmd for cmd, _ in steps)
    for cmd, _ in steps:  # every folder a command reads was made by a command before it
        for path in re.findall(r"--(?:model|data|problems|candidates) (out/\S+)", cmd):
            assert path.split("/")[1] in made[:made.index(cmd)], (cmd, path)


def test_the_walkthrough_runs_top_to_bottom_with_the_stated_output(tmp_path):
    for f in ROOT.glob("*.py"):  # the scripts, as a user runs them, writing into a fresh out/
        (tmp_path / f.name).symlink_to(f)
    for folder in ("common", "lab", "checkpoints", "datasets"):  # the packages, the tiny base, MATH-V
        (tmp_path / folder).symlink_to(ROOT / folder)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for cmd, want in walkthrough():
        r = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        out = r.stdout + r.stderr
        assert r.returncode == 0, f"{cmd}\n{out[-3000:]}"
        for frags in want:
            at = 0
            for frag in frags:
                i = out.find(frag, at)
                assert i >= 0, f"{cmd}: README says {' ... '.join(frags)!r}; it printed:\n{out[-3000:]}"
                at = i + len(frag)
