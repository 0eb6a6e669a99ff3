"""The runner daemon: claims runs from the shared database and executes them (DESIGN §5).

It never imports `api/`. Its loops — dispatcher (flush + claim), heartbeat, reaper, wake-up —
each have a `run_once` that tests call directly, and a supervisor stops the daemon loudly if
any of them dies.
"""
