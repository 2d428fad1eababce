"""`make demo`: the command, its steps, and the scoring and report at its end (command.py,
ramvid.demo.command:main), and the shipped checkpoint (shipped/)."""
