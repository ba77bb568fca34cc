"""A warm start for the stage processes of the end-to-end tests: a zygote.

A stage process spends ~4 of its ~6 s on the smoke workspace importing torch, transformers, trl and peft, and the suite
runs a few hundred of them. `serve` imports those libraries once, then forks for each stage: DVC still runs the stage's
real command (`detoxrl generate base`) in a shell, through a `detoxrl` on PATH that is this file's `client`. The client
hands the zygote its argv, cwd, environment and stdin/stdout/stderr; the forked process takes them over and runs
`detoxrl.entry.main()`, the console script's own entry point, so the project code that runs is the same and only the
interpreter start is skipped. Its exit status comes back as the client's.

The client runs the real `detoxrl` instead (exec) when the zygote is not up, when the command is not a stage command
(`FORWARDED`), or when the environment differs in a variable that libraries read at import time (`_IMPORT_TIME_ENV`):
so a test that sets, e.g., OMP_NUM_THREADS or HF_HUB_OFFLINE for a stage gets a fresh interpreter that reads it.
Signals (SIGINT, SIGTERM, SIGHUP) sent to the client go to the stage; if the client dies (SIGKILL), the stage is killed.

The packaged-model workspace (tests/e2e/test_packaged.py) and every `accelerate launch` run without it: they start
interpreters as a user's `dvc repro` does.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import sys
from pathlib import Path

FORWARDED_ENV = "DETOXRL_ZYGOTE_COMMANDS"  # space-separated `detoxrl` subcommands the zygote runs
SOCKET_ENV = "DETOXRL_ZYGOTE_SOCKET"
REAL_ENV = "DETOXRL_ZYGOTE_REAL"  # the real console script, exec'd when the zygote is not used
_IMPORT_TIME_ENV = ("OMP_", "MKL_", "KMP_", "OPENBLAS_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TORCH", "PYTORCH_",
                    "CUDA_", "TOKENIZERS_", "PYTHON", "MPLBACKEND", "TRL_", "PEFT_", "DATASETS_")
PRELOAD = ["torch", "numpy", "transformers", "peft", "trl", "accelerate", "datasets", "sklearn.linear_model",
           "scipy.stats", "pandas", "dvclive", "matplotlib", "detoxify", "detoxrl.entry"]
PRELOAD_ATTRS = {"transformers": ["AutoModelForCausalLM", "AutoModelForSequenceClassification", "AutoTokenizer",
                                  "Trainer"],
                 "trl": ["SFTTrainer", "DPOTrainer", "RewardTrainer", "GRPOTrainer", "RLOOTrainer"],
                 "peft": ["LoraConfig", "get_peft_model", "PeftModel"]}


def _import_time_env(env: dict) -> dict:
    return {k: v for k, v in env.items() if k.startswith(_IMPORT_TIME_ENV)}


def _send(sock: socket.socket, obj, fds=()) -> None:
    data = json.dumps(obj).encode()
    socket.send_fds(sock, [struct.pack("!I", len(data)) + data], list(fds)) if fds else \
        sock.sendall(struct.pack("!I", len(data)) + data)


def _recv(sock: socket.socket, with_fds: int = 0):
    if with_fds:
        head, fds, _, _ = socket.recv_fds(sock, 4, with_fds)
    else:
        head, fds = sock.recv(4, socket.MSG_WAITALL), []
    if len(head) < 4:
        return None, fds
    (n,) = struct.unpack("!I", head)
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None, fds
        buf += chunk
    return json.loads(buf), fds


# --- the client: `detoxrl` on the tests' PATH ---------------------------------------------------------------------

def client() -> None:
    argv, env = sys.argv[1:], dict(os.environ)
    real = env.get(REAL_ENV, "")
    sock_path = env.get(SOCKET_ENV, "")
    forwarded = set(env.get(FORWARDED_ENV, "").split())
    sock = None
    if argv and argv[0] in forwarded and sock_path and os.path.exists(sock_path):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(sock_path)
        except OSError:
            sock = None
    if sock is None:
        os.execv(real, [real, *argv])
    _send(sock, {"argv": argv, "cwd": os.getcwd(), "env": env}, fds=[0, 1, 2])
    reply, _ = _recv(sock)
    if reply is None or "pid" not in reply:  # the zygote refused (its import-time environment differs)
        if reply and os.environ.get("DETOXRL_ZYGOTE_DEBUG"):
            print(f"zygote: {reply['refused']}: a fresh interpreter", file=sys.stderr)
        sock.close()
        os.execv(real, [real, *argv])
    pid = reply["pid"]
    if os.environ.get("DETOXRL_ZYGOTE_DEBUG"):
        print(f"zygote: forked {pid}", file=sys.stderr, flush=True)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: os.kill(pid, s))
    reply, _ = _recv(sock)  # the stage's exit status (a signal handled above does not interrupt it: PEP 475)
    code = 1 if reply is None else reply["code"]
    if code < 0:  # killed by a signal: die the same way
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


# --- the zygote ------------------------------------------------------------------------------------------------------

def _run_stage(msg: dict, fds: list[int], set_by_imports: dict) -> None:
    """In the forked process: become the client's process, run the console script, exit with its status.
    The environment is the client's, plus what the preloaded imports set in it (they would set it here too)."""
    import atexit
    import random

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(msg["cwd"])
    os.environ.clear()
    os.environ.update({**set_by_imports, **msg["env"]})
    for sig in (signal.SIGINT,):
        signal.signal(sig, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    random.seed()  # as a fresh interpreter's (torch's default generator starts at its fixed seed either way)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    sys.argv = ["detoxrl", *msg["argv"]]
    code = 0
    try:
        from detoxrl.entry import main

        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            atexit._run_exitfuncs()
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
            os._exit(code)


def _handle(conn: socket.socket, ready_env: dict, set_by_imports: dict) -> None:
    """In a forked handler: fork the stage, tell the client its pid, wait for it (or for the client to vanish)."""
    msg, fds = _recv(conn, with_fds=3)
    # what the preloaded imports set themselves (torch: TORCHINDUCTOR_CACHE_DIR, KMP_*) is set in a client too that
    # imported them (a test process): not a difference
    theirs = {k: v for k, v in _import_time_env(msg["env"] if msg else {}).items() if k not in set_by_imports}
    if msg is None or theirs != ready_env:
        keys = sorted(k for k in {*theirs, *ready_env} if theirs.get(k) != ready_env.get(k))
        _send(conn, {"refused": f"import-time environment differs ({', '.join(keys)})"})
        os._exit(0)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        conn.close()
        _run_stage(msg, fds, set_by_imports)
    for fd in fds:
        os.close(fd)
    _send(conn, {"pid": pid})
    pidfd = os.pidfd_open(pid)
    ready, _, _ = select.select([pidfd, conn], [], [])
    if pidfd not in ready:  # the client hung up or died: the stage goes with it
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    try:
        _send(conn, {"code": os.waitstatus_to_exitcode(status)})
    except OSError:
        pass
    os._exit(0)


def serve(sock_path: str) -> None:
    import importlib

    before = dict(os.environ)  # before the imports: some set variables (torch: KMP_*, TORCHINDUCTOR_CACHE_DIR)
    for name in PRELOAD:
        try:
            module = importlib.import_module(name)
            for attr in PRELOAD_ATTRS.get(name, []):
                getattr(module, attr, None)
        except Exception as exc:  # a missing optional library: the stages that need it import it themselves
            print(f"zygote: not preloaded: {name}: {exc}", file=sys.stderr)
    set_by_imports = {k: v for k, v in os.environ.items() if before.get(k) != v}
    ready_env = {k: v for k, v in _import_time_env(before).items() if k not in set_by_imports}
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # handlers are reaped by the kernel
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = f"{sock_path}.tmp"
    server.bind(tmp)
    server.listen(64)
    os.rename(tmp, sock_path)  # clients see the socket only once the libraries are loaded
    print(f"zygote: ready on {sock_path}", file=sys.stderr, flush=True)
    while True:
        conn, _ = server.accept()
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            server.close()
            _handle(conn, ready_env, set_by_imports)
        conn.close()


def write_shim(bin_dir: Path) -> Path:
    """A `detoxrl` executable in bin_dir that runs `client()` with this interpreter."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "detoxrl"
    shim.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                    "from zygote import client\nclient()\n")
    shim.chmod(0o755)
    return shim


if __name__ == "__main__":
    serve(sys.argv[2]) if sys.argv[1:2] == ["serve"] else client()
