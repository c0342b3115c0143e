"""Run matrix jobs on this machine: one spawned process per job, `parallel` at a time.

A process per job (not a shared pool) so that a worker that dies (OOM kill, segfault) loses only its
own job, which is started again up to `max_retries` times; concurrent.futures would break the whole
pool and every job in flight with it.
"""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod
from collections import deque
from multiprocessing.connection import wait
from typing import Callable

from smolship.export_matrix import TargetOutcome
from smolship.matrix.jobs import MatrixJob, finished_event, run_matrix_job, start_event


def _child(mjob: MatrixJob, send, events) -> None:
    from smolship.logs import quiet_library_logs

    quiet_library_logs()  # a spawned process: the parent's logging setup does not carry over
    send.send(run_matrix_job(mjob, events.put, announce=False))
    send.close()


def _drain(events, on_event: Callable[[dict], None]) -> None:
    while True:
        try:
            on_event(events.get_nowait())
        except queue_mod.Empty:
            return


def run_local(mjobs: list[MatrixJob], parallel: int = 1, max_retries: int = 2,
              on_event: Callable[[dict], None] = lambda e: None) -> list[TargetOutcome]:
    ctx = mp.get_context("spawn")  # no state (runtimes, threads) inherited from the driver
    events = ctx.Queue()
    pending, running = deque(range(len(mjobs))), {}
    attempts, results = [0] * len(mjobs), [None] * len(mjobs)
    while pending or running:
        while pending and len(running) < max(1, parallel):
            i = pending.popleft()
            attempts[i] += 1
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child, args=(mjobs[i], send, events), name=f"smolship-{mjobs[i].key}")
            proc.start()
            send.close()  # the child holds the only writer: EOF here means it died
            on_event(start_event(mjobs[i].key, proc.pid))
            running[i] = (proc, recv)
        wait([p.sentinel for p, _ in running.values()] + [r for _, r in running.values()], timeout=0.25)
        _drain(events, on_event)
        for i, (proc, recv) in list(running.items()):
            if not recv.poll() and proc.is_alive():
                continue
            try:
                results[i] = recv.recv()
            except EOFError:  # exited without a result: the process died
                pass
            proc.join()
            recv.close()
            del running[i]
            if results[i] is not None:
                _drain(events, on_event)  # the job's last progress first
                on_event(finished_event(mjobs[i].key, results[i]))
                continue
            key, why = mjobs[i].key, f"exit code {proc.exitcode}"
            if attempts[i] <= max_retries:
                on_event({"job": key, "kind": "retry", "attempt": attempts[i] + 1, "why": why})
                pending.append(i)
            else:
                results[i] = TargetOutcome(mjobs[i].job.target, error=f"the worker of {key} died {attempts[i]} times ({why})",
                                           fix="Run this job alone to see what failed; check free memory (dmesg shows OOM kills).")
                on_event(finished_event(key, results[i]))
    _drain(events, on_event)
    return results
