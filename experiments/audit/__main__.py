from experiments import cli
from experiments.audit.main import main

if __name__ == "__main__":
    cli.run(main)
