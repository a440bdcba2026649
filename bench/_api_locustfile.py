"""The clients of bench/api_load.py (locust runs this file in its own process; see that script).

Each client calls every endpoint in turn, without pause: the API paths with the bench user's token,
the dashboard page with its session cookie. The paths and credentials come from the environment.
"""

import json
import os
import random

from locust import FastHttpUser, constant, task

PATHS = json.loads(os.environ["CT4_LOAD_PATHS"])
TOKEN = os.environ["CT4_LOAD_TOKEN"]
SESSION = os.environ["CT4_LOAD_SESSION"]
DASHBOARD = os.environ["CT4_LOAD_DASHBOARD"]


class ApiClient(FastHttpUser):
    wait_time = constant(0)

    def on_start(self):
        # Clients start at different endpoints, so the run does not begin with 20 identical requests.
        self.order = PATHS[:]
        random.shuffle(self.order)

    @task
    def every_endpoint(self):
        for path in self.order:
            if path == DASHBOARD:
                headers = {"Cookie": f"sessionid={SESSION}"}
            else:
                headers = {"Authorization": f"Token {TOKEN}", "Accept": "application/json"}
            # Anything but 200 is an error: a redirect (to the login page) too, so none is followed.
            with self.client.get(path, headers=headers, name=path, allow_redirects=False,
                                 catch_response=True) as response:
                if response.status_code != 200:
                    response.failure(f"status {response.status_code}")
