defmodule StatusGW.Tail do
  @moduledoc """
  Follows conversations over Server-Sent Events and sends each update (and
  each gap) to a process as `{:statusgw, tail_pid, :status_update | :gap, map}`.
  A dropped connection is reopened after `reconnect_ms` with the last
  event's id, so nothing is missed or seen twice while history holds it;
  when it does not, a `:gap` says what was missed. A stream the gateway
  refuses (a 4xx other than 429) ends the process with
  `{:shutdown, {:refused, status, body}}`.

  Options: `to` (default the caller), `url` (default the application's),
  `token`, `categories`, `last_event_id`, `reconnect_ms` (1,000).
  """

  use GenServer
  require Logger
  alias StatusGW.JSON

  def start_link(conversations, opts \\ []) do
    GenServer.start_link(__MODULE__, {conversations, Keyword.put_new(opts, :to, self())})
  end

  def stop(pid), do: GenServer.stop(pid)

  @impl true
  def init({conversations, opts}) do
    base = opts[:url] || Application.get_env(:statusgw, :url, "http://127.0.0.1:4000")
    convs = if is_binary(conversations), do: conversations, else: Enum.join(conversations, ",")
    query = [conversations: convs, categories: opts[:categories] && Enum.join(opts[:categories], ","), token: opts[:token]]
    query = query |> Enum.reject(fn {_, v} -> is_nil(v) end) |> URI.encode_query()
    send(self(), :connect)
    # an HTTP client of its own: the endless stream holds its connection
    {:ok, httpc} = :inets.start(:httpc, [profile: :"statusgw_tail_#{System.unique_integer([:positive])}"], :stand_alone)

    {:ok,
     %{
       url: String.trim_trailing(base, "/") <> "/api/v1/events?" <> query,
       to: opts[:to],
       position: opts[:last_event_id],
       reconnect: opts[:reconnect_ms] || 1_000,
       request: nil,
       httpc: httpc,
       pending: ""
     }}
  end

  @impl true
  def handle_info(:connect, s) do
    headers = [{~c"accept", ~c"text/event-stream"}]
    headers = if s.position, do: [{~c"last-event-id", to_charlist(s.position)} | headers], else: headers
    opts = [sync: false, stream: :self, body_format: :binary]

    case :httpc.request(:get, {to_charlist(s.url), headers}, [timeout: :infinity], opts, s.httpc) do
      {:ok, ref} -> {:noreply, %{s | request: ref, pending: ""}}
      {:error, reason} -> reconnect(s, reason)
    end
  end

  def handle_info({:http, {ref, :stream_start, _headers}}, %{request: ref} = s), do: {:noreply, s}

  def handle_info({:http, {ref, :stream, chunk}}, %{request: ref} = s) do
    {blocks, rest} = split_blocks(s.pending <> chunk)
    {:noreply, Enum.reduce(blocks, %{s | pending: rest}, &deliver/2)}
  end

  def handle_info({:http, {ref, :stream_end, _}}, %{request: ref} = s), do: reconnect(s, :stream_end)
  def handle_info({:http, {ref, {:error, reason}}}, %{request: ref} = s), do: reconnect(s, reason)

  def handle_info({:http, {ref, {{_, status, _}, _, body}}}, %{request: ref} = s)
      when status in 400..499 and status != 429,
      do: {:stop, {:shutdown, {:refused, status, body}}, %{s | request: nil}}

  def handle_info({:http, {ref, {{_, status, _}, _, _}}}, %{request: ref} = s), do: reconnect(s, {:status, status})
  def handle_info(_, s), do: {:noreply, s}

  @impl true
  def terminate(_, s) do
    if s.request, do: :httpc.cancel_request(s.request, s.httpc)
    Process.unlink(s.httpc) # its exit must not become this process's
    :inets.stop(:stand_alone, s.httpc)
  end

  defp reconnect(s, reason) do
    Logger.info("statusgw: tail reconnecting: error=#{inspect(reason)}")
    Process.send_after(self(), :connect, s.reconnect)
    {:noreply, %{s | request: nil}}
  end

  # complete blocks (separated by a blank line) and what is left
  defp split_blocks(text) do
    parts = String.split(String.replace(text, "\r\n", "\n"), "\n\n")
    {Enum.drop(parts, -1), List.last(parts)}
  end

  defp deliver(block, s) do
    fields =
      for line <- String.split(block, "\n"), line != "", not String.starts_with?(line, ":") do
        case String.split(line, ":", parts: 2) do
          [f, v] -> {f, String.replace_prefix(v, " ", "")}
          [f] -> {f, ""}
        end
      end

    id = List.keyfind(fields, "id", 0)
    event = case List.keyfind(fields, "event", 0), do: ({_, e} -> e; nil -> "message")
    data = for {"data", d} <- fields, do: d
    s = if id, do: %{s | position: elem(id, 1)}, else: s

    if event in ["status_update", "gap"],
      do: send(s.to, {:statusgw, self(), String.to_atom(event), JSON.decode!(Enum.join(data, "\n"))})

    s
  end
end
