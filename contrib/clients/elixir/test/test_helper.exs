# Each test points the :statusgw application at its own gateway (see
# StatusGWTest.restart_app/1), so they run one at a time.
ExUnit.start(timeout: 60_000)
