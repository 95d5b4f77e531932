"""`python -m serving.model_server [flags]`: the model server's command line (`server.main`)."""

import sys

from serving.model_server.server import main

sys.exit(main())
