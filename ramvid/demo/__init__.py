"""`make demo`: the command and its steps (command.py, ramvid.demo.command:main), the scoring
and report at its end (report.py), and the shipped checkpoint (shipped/)."""
