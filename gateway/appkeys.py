"""Typed keys for what the application holds."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from gateway.accounts import Accounts, UsageBuffer
from gateway.auth import Authenticator
from gateway.body_budget import BodyBudget
from gateway.config import Settings
from gateway.forms import BodyLimits
from gateway.pipeline import Pipeline
from gateway.quota import TokenEstimator
from gateway.shield import Shield
from gateway.store import Store
from gateway.store.base import Coordinator, Ledger
from gateway.text_forms import TextLimits
from gateway.timings import MissTimings
from gateway.upstream import NomicClient

SETTINGS = web.AppKey("settings", Settings)
BODY_LIMITS = web.AppKey("body_limits", BodyLimits)
TEXT_LIMITS = web.AppKey("text_limits", TextLimits)
STORE = web.AppKey("store", Store)
LEDGER = web.AppKey("ledger", Ledger)
COORDINATOR = web.AppKey("coordinator", Coordinator)
AUTH = web.AppKey("auth", Authenticator)
ACCOUNTS = web.AppKey("accounts", Accounts)
PIPELINE = web.AppKey("pipeline", Pipeline)
SHIELD = web.AppKey("shield", Shield)
USAGE = web.AppKey("usage", UsageBuffer)  # usage counted in the process, written every second
TIMINGS = web.AppKey("timings", MissTimings)  # the miss path's, derived once
ESTIMATOR = web.AppKey("estimator", TokenEstimator)  # what an item is likely to cost
UPSTREAM = web.AppKey("upstream", NomicClient)
BODY_BUDGET = web.AppKey("body_budget", BodyBudget)
MODEL_ALIASES = web.AppKey("model_aliases", dict[str, str])  # another name: a served model
# One thread for a large request's parsing and per-text work, off the event loop.
HEAVY_WORK = web.AppKey("heavy_work", ThreadPoolExecutor)
