"""``python -m services.tally``: the tally process, configured from the environment."""

from services.common.settings import TallySettings
from services.tally.main import run

if __name__ == "__main__":
    run(TallySettings())
