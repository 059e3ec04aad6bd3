defmodule StatusGW.Test.Gateway do
  @moduledoc false
  # The real statusgw on a free port, for the client's tests.
  alias StatusGW.JSON

  @root Path.expand("../../../../..", __DIR__)

  defstruct [:dir, :port, :config, :os_pid, :erl_port]

  def bin, do: Path.expand(System.get_env("STATUSGW_BIN") || Path.join(@root, "build/statusgw"))

  def free_port do
    {:ok, s} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
    {:ok, port} = :inet.port(s)
    :gen_tcp.close(s)
    port
  end

  defp lua(v) when is_binary(v), do: JSON.encode!(v)
  defp lua(v) when is_map(v), do: "{" <> Enum.map_join(v, ", ", fn {k, x} -> "[#{JSON.encode!(to_string(k))}] = #{lua(x)}" end) <> "}"
  defp lua(v), do: to_string(v)

  @doc "plugins: names of the repository's plugins (copied) or {name, source}."
  def new(config \\ %{}, plugins \\ [], port \\ nil) do
    dir = Path.join(System.tmp_dir!(), "statusgw-ex-#{System.unique_integer([:positive])}")
    plugdir = Path.join(dir, "plugins")
    File.mkdir_p!(plugdir)

    for p <- plugins do
      case p do
        {name, src} -> File.write!(Path.join(plugdir, "#{name}.lua"), src)
        name -> File.cp!(Path.join([@root, "plugins", "#{name}.lua"]), Path.join(plugdir, "#{name}.lua"))
      end
    end

    cfg = Map.merge(%{plugins_dir: plugdir}, config)
    file = Path.join(dir, "statusgw.lua")
    File.write!(file, "return {\n" <> Enum.map_join(cfg, "", fn {k, v} -> "  #{k} = #{lua(v)},\n" end) <> "}\n")
    %__MODULE__{dir: dir, port: port || free_port(), config: file}
  end

  def url(gw), do: "http://127.0.0.1:#{gw.port}"

  def start(gw) do
    script = ~s(exec "$0" --config "$1" --listen "$2" </dev/null >/dev/null 2>>"$3")
    args = ["-c", script, bin(), gw.config, "127.0.0.1:#{gw.port}", Path.join(gw.dir, "statusgw.log")]
    p = Port.open({:spawn_executable, "/bin/sh"}, [:binary, :exit_status, args: args])
    {:os_pid, os_pid} = Port.info(p, :os_pid)
    gw = %{gw | os_pid: os_pid, erl_port: p}

    if wait_until(fn -> match?({200, _}, get(gw, "/healthz")) end, 10_000),
      do: gw,
      else: (stop(gw) && raise("statusgw did not start: " <> log(gw)))
  end

  def log(gw), do: File.read!(Path.join(gw.dir, "statusgw.log"))

  # By its OS pid: on_exit runs in another process than the port's owner.
  def stop(%{erl_port: p} = gw) when p != nil do
    System.cmd("kill", ["-TERM", to_string(gw.os_pid)], stderr_to_stdout: true)

    unless wait_until(fn -> not File.exists?("/proc/#{gw.os_pid}") end, 10_000),
      do: System.cmd("kill", ["-KILL", to_string(gw.os_pid)], stderr_to_stdout: true)

    if log(gw) =~ ~r/AddressSanitizer|LeakSanitizer|runtime error:/, do: raise("sanitizer report:\n" <> log(gw))
    %{gw | erl_port: nil}
  end

  def stop(gw), do: gw

  def cleanup(gw) do
    stop(gw)
    File.rm_rf!(gw.dir)
  end

  def wait_until(fun, ms) do
    deadline = System.monotonic_time(:millisecond) + ms
    Stream.repeatedly(fn -> fun.() || (Process.sleep(20) && false) end)
    |> Enum.find(fn ok -> ok or System.monotonic_time(:millisecond) > deadline end)
  end

  def get(gw, path) do
    case :httpc.request(:get, {to_charlist(url(gw) <> path), []}, [timeout: 5_000], body_format: :binary) do
      {:ok, {{_, status, _}, _, body}} -> {status, JSON.decode!(body)}
      {:error, reason} -> {:error, reason}
    end
  end

  def post(gw, path, body) do
    req = {to_charlist(url(gw) <> path), [], ~c"application/json", JSON.encode!(body)}
    {:ok, {{_, status, _}, _, resp}} = :httpc.request(:post, req, [timeout: 5_000], body_format: :binary)
    {status, JSON.decode!(resp)}
  end

  def history(gw, conv) do
    case get(gw, "/api/v1/conversations/#{conv}/history") do
      {200, %{"updates" => u}} -> u
      _ -> []
    end
  end
end
