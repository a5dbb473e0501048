"""The API's routers, one per area; :mod:`serving.app` includes them."""
