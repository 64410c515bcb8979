"""The API's documentation each panel serves: the OpenAPI document (openapi.py) and the portal."""
