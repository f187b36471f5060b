from sarcomakit.cli.main import run

run()
