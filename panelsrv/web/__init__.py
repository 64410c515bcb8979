"""The reseller pages (sign-in, /panels, /panels/api, /panels/settings): see pages.py."""
