defmodule StatusGW.MixProject do
  use Mix.Project

  # No Hex packages: JSON is jiffy from the system's Erlang libraries
  # (Debian's erlang-jiffy), HTTP is OTP's :httpc.
  def project do
    [
      app: :statusgw,
      version: "0.1.0",
      elixir: "~> 1.14",
      elixirc_paths: elixirc_paths(Mix.env()),
      start_permanent: Mix.env() == :prod,
      deps: []
    ]
  end

  def application do
    [
      mod: {StatusGW.Application, []},
      extra_applications: [:logger, :inets, :ssl, :crypto, :jiffy],
      env: [
        url: "http://127.0.0.1:4000",
        api_key: nil,
        source: nil,
        buffer_size: 10_000,
        batch_size: 100,
        flush_interval_ms: 100,
        request_timeout_ms: 5_000,
        shutdown_timeout_ms: 5_000,
        on_event: nil
      ]
    ]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]
end
