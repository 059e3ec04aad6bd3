defmodule StatusGW.Application do
  @moduledoc false
  use Application

  @impl true
  def start(_type, _args) do
    children = if Application.get_env(:statusgw, :start_buffer, true), do: [StatusGW.Buffer], else: []
    Supervisor.start_link(children, strategy: :one_for_one, name: StatusGW.Supervisor)
  end
end
