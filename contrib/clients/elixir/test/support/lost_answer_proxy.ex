defmodule StatusGW.Test.LostAnswerProxy do
  @moduledoc false
  # Forwards to the gateway, but for the first `lose` requests closes the
  # client's connection once the gateway has answered instead of passing
  # the answer on: the updates are taken, the client cannot know it.

  def start(target_port, lose \\ 1) do
    {:ok, l} = :gen_tcp.listen(0, [:binary, ip: {127, 0, 0, 1}, active: false, reuseaddr: true])
    {:ok, port} = :inet.port(l)
    counter = :counters.new(1, [])
    pid = spawn(fn -> accept(l, target_port, lose, counter) end)
    :gen_tcp.controlling_process(l, pid)
    %{url: "http://127.0.0.1:#{port}", pid: pid, listener: l, counter: counter}
  end

  def requests(proxy), do: :counters.get(proxy.counter, 1)

  def stop(proxy) do
    Process.exit(proxy.pid, :kill)
    :gen_tcp.close(proxy.listener)
  end

  defp accept(l, target, lose, counter) do
    case :gen_tcp.accept(l) do
      {:ok, c} ->
        pid = spawn(fn -> serve(c, target, lose, counter) end)
        :gen_tcp.controlling_process(c, pid)
        accept(l, target, lose, counter)

      _ ->
        :ok
    end
  end

  defp serve(c, target, lose, counter) do
    {:ok, up} = :gen_tcp.connect({127, 0, 0, 1}, target, [:binary, active: false])
    relay(c, up, lose, counter)
    :gen_tcp.close(c)
    :gen_tcp.close(up)
  end

  defp relay(c, up, lose, counter) do
    with {:ok, req} <- read_message(c, ""),
         :ok <- :gen_tcp.send(up, req),
         {:ok, answer} <- read_message(up, "") do
      :counters.add(counter, 1, 1)

      if :counters.get(counter, 1) > lose and :gen_tcp.send(c, answer) == :ok,
        do: relay(c, up, lose, counter)
    end
  end

  # one HTTP message with a Content-Length (a request, or the gateway's answer)
  defp read_message(c, acc) do
    case :binary.split(acc, "\r\n\r\n") do
      [head, body] ->
        [_, n] = Regex.run(~r/content-length:\s*(\d+)/i, head)
        read_body(c, head, body, String.to_integer(n))

      [_] ->
        with {:ok, more} <- :gen_tcp.recv(c, 0, 5_000), do: read_message(c, acc <> more)
    end
  end

  defp read_body(_c, head, body, n) when byte_size(body) >= n, do: {:ok, head <> "\r\n\r\n" <> body}

  defp read_body(c, head, body, n) do
    with {:ok, more} <- :gen_tcp.recv(c, 0, 5_000), do: read_body(c, head, body <> more, n)
  end
end
