"""Starting rank processes: environment, local subprocesses, remote hosts."""
