defmodule StatusGWTest do
  # The Elixir client against the real gateway: mix test
  use ExUnit.Case, async: false
  import ExUnit.CaptureLog
  alias StatusGW.Test.{Gateway, LostAnswerProxy}

  @ts ~r/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/

  # refuses "busy…" texts once, with a retry_after
  @busy_once File.read!(Path.expand("../../testdata/busy_once.lua", __DIR__))

  @app_keys [:url, :source, :buffer_size, :batch_size, :flush_interval_ms, :on_event, :shutdown_timeout_ms]

  # The :statusgw application, restarted on this configuration: its
  # supervised buffer is what the module-level calls use.
  defp restart_app(env) do
    Application.stop(:statusgw)
    for k <- @app_keys, do: Application.delete_env(:statusgw, k)
    for {k, v} <- env, do: Application.put_env(:statusgw, k, v)
    {:ok, _} = Application.ensure_all_started(:statusgw)
  end

  defp gateway(config \\ %{}, plugins \\ [], port \\ nil) do
    gw = Gateway.new(config, plugins, port) |> Gateway.start()
    on_exit(fn -> Gateway.cleanup(gw) end)
    gw
  end

  defp without_timestamp(md) do
    {ts, rest} = Map.pop(md, "timestamp")
    assert ts =~ @ts, "built metadata carries a timestamp"
    rest
  end

  setup do
    on_exit(fn -> Application.stop(:statusgw) end)
  end

  test "every helper delivers the builders' metadata" do
    gw = gateway()
    restart_app(url: Gateway.url(gw), source: "ex-test")
    conv = "ex-helpers"
    for cat <- StatusGW.categories(), do: assert(apply(StatusGW, cat, [conv, "a #{cat} update", %{k: cat}]))
    StatusGW.update(conv, :info, "llm", StatusGW.build_llm_metadata("gpt-4", "openai", %{priority: "high"}))
    StatusGW.update(conv, :tool, "tool", StatusGW.build_tool_metadata("search_code", %{q: String.duplicate("x", 150), n: 3}))
    StatusGW.update(conv, :workflow, "wf", StatusGW.build_workflow_metadata("deploy", 3, 7))
    StatusGW.update(conv, :workflow, "wf0", StatusGW.build_workflow_metadata("empty", 0, 0))
    StatusGW.update(conv, :error, "err", StatusGW.build_error_metadata(:timeout, "took too long", %{attempt: 2}))
    start = System.monotonic_time(:millisecond) - 1500
    StatusGW.with_timing(conv, :info, "Import complete", start, %{records_imported: 1000})
    StatusGW.progress_percentage(conv, "Processing items", 3, 10, %{current_item: "i3"})
    assert 2 == StatusGW.bulk_update(conv, [{:info, "b1"}, %{category: :planning, text: "b2", metadata: %{x: 1}}])
    refute StatusGW.maybe_update(conv, false, :info, "never")
    refute StatusGW.maybe_update(nil, true, :info, "never")
    assert StatusGW.maybe_update(conv, true, :info, "maybe")
    assert StatusGW.flush(10_000)

    got = Gateway.history(gw, conv)
    assert Enum.map(got, & &1["seq"]) == Enum.to_list(1..length(got))
    by = Map.new(got, &{&1["text"], &1})
    refute Map.has_key?(by, "never")

    for cat <- StatusGW.categories() do
      u = by["a #{cat} update"]
      assert {u["category"], u["metadata"], u["source"]} == {"#{cat}", %{"k" => "#{cat}"}, "ex-test"}
    end

    assert without_timestamp(by["llm"]["metadata"]) == %{"model" => "gpt-4", "provider" => "openai", "priority" => "high"}

    assert without_timestamp(by["tool"]["metadata"]) ==
             %{"tool" => "search_code", "params" => %{"q" => String.duplicate("x", 100) <> "...", "n" => 3}}

    assert without_timestamp(by["wf"]["metadata"]) == %{"workflow" => "deploy", "progress" => "3/7", "percentage" => 43}
    assert without_timestamp(by["wf0"]["metadata"]) == %{"workflow" => "empty", "progress" => "0/0", "percentage" => 0}

    assert without_timestamp(by["err"]["metadata"]) ==
             %{"error_type" => "timeout", "message" => "took too long", "attempt" => 2}

    timed = without_timestamp(by["Import complete"]["metadata"])
    assert timed["duration_ms"] >= 1500 and timed["duration_ms"] < 3000
    assert timed["duration_human"] =~ ~r/^(1\.[5-9]|2\.\d)s$/
    assert timed["records_imported"] == 1000
    p = by["Processing items (30%)"]

    assert {p["category"], without_timestamp(p["metadata"])} ==
             {"progress", %{"current" => 3, "total" => 10, "percentage" => 30, "progress" => "3/10", "current_item" => "i3"}}

    assert {by["b2"]["category"], by["b2"]["metadata"]} == {"planning", %{"x" => 1}}
    s = StatusGW.stats()
    assert {s.sent, s.dropped, s.rejected, s.queued} == {length(got), 0, 0, 0}
  end

  test "the builders compute what the gateway's own builders compute" do
    gw = gateway(%{}, ["builders"])
    samples = [0, 1, 849.6, 850, 999, 1000, 1049, 1050, 1150, 1250, 1350, 1449, 1450, 1500, 1750, 2250,
               59949, 59950, 59999, 60000, 66000, 75000, 89999, 90000, 3_600_000]
    pairs = [{1, 3}, {2, 3}, {1, 8}, {5, 8}, {0, 0}, {7, 7}, {1, 200}]

    for ms <- samples do
      assert {202, _} = Gateway.post(gw, "/api/v1/status", %{conversation_id: "ex-cross", category: "info", text: "#{ms}",
                                                             builder: "timing", args: %{duration_ms: ms}})
    end

    for {c, t} <- pairs do
      Gateway.post(gw, "/api/v1/status", %{conversation_id: "ex-cross", category: "progress", text: "p",
                                           builder: "progress", args: %{current: c, total: t}})
    end

    got = Gateway.history(gw, "ex-cross")
    theirs = for %{"category" => "info", "metadata" => m} <- got, do: {m["duration_ms"], m["duration_human"]}
    mine = for ms <- samples, m = StatusGW.Metadata.timing(ms), do: {m["duration_ms"], m["duration_human"]}
    assert mine == theirs

    for {u, {c, t}} <- Enum.zip(Enum.filter(got, &(&1["category"] == "progress")), pairs) do
      {md, text} = StatusGW.Metadata.progress("p", c, t)
      assert {without_timestamp(md), text} == {without_timestamp(u["metadata"]), u["text"]}
    end
  end

  test "calls return at once while the gateway is down; delivered once it is up" do
    port = Gateway.free_port()
    restart_app(url: "http://127.0.0.1:#{port}", flush_interval_ms: 50)

    capture_log(fn ->
      {us, results} = :timer.tc(fn -> for i <- 0..49, do: StatusGW.info("ex-down", "u#{i}") end)
      assert Enum.all?(results)
      assert us < 500_000, "50 calls return at once"
      Process.sleep(500)
      assert StatusGW.stats().queued == 50
      gw = gateway(%{}, [], port)
      assert StatusGW.flush(15_000)
      assert Enum.map(Gateway.history(gw, "ex-down"), & &1["text"]) == for(i <- 0..49, do: "u#{i}")
      assert StatusGW.stats().sent == 50
    end)
  end

  test "a retry after a lost answer is not delivered twice" do
    gw = gateway()
    proxy = LostAnswerProxy.start(gw.port, 1)
    on_exit(fn -> LostAnswerProxy.stop(proxy) end)
    restart_app(url: proxy.url, flush_interval_ms: 20)

    capture_log(fn ->
      for i <- 0..19, do: StatusGW.tool("ex-lost", "t#{i}")
      assert StatusGW.flush(15_000)
    end)

    assert LostAnswerProxy.requests(proxy) >= 2, "the first answer was lost, the batch went again"
    assert Enum.map(Gateway.history(gw, "ex-lost"), & &1["text"]) == for(i <- 0..19, do: "t#{i}")
    s = StatusGW.stats()
    assert s.sent + s.duplicates == 20
    assert s.duplicates >= 1
  end

  test "refused updates are retried after Retry-After; those refused for good are counted" do
    gw = gateway(%{}, [{"busy_once", @busy_once}])
    me = self()
    restart_app(url: Gateway.url(gw), flush_interval_ms: 20, on_event: fn e, m, _ -> send(me, {:event, e, m}) end)

    log =
      capture_log(fn ->
        for t <- ["ok1", "busy1", "ok2", "busy2"], do: StatusGW.info("ex-busy", t)
        StatusGW.update("ex-busy", :no_such_category, "bad")
        {us, ok} = :timer.tc(fn -> StatusGW.flush(15_000) end)
        assert ok
        assert us >= 900_000, "waited for Retry-After"
      end)

    assert log =~ "update refused: invalid_category"
    assert Enum.sort(Enum.map(Gateway.history(gw, "ex-busy"), & &1["text"])) == ["busy1", "busy2", "ok1", "ok2"]
    s = StatusGW.stats()
    assert {s.sent, s.retried, s.rejected} == {4, 2, 1}
    assert_received {:event, [:statusgw, :batch, :sent], %{count: 5, sent: 2}}
  end

  test "overflow is counted, logged and reported" do
    me = self()
    restart_app(url: "http://127.0.0.1:#{Gateway.free_port()}", buffer_size: 10, shutdown_timeout_ms: 100,
                on_event: fn e, m, _ -> send(me, {:event, e, m}) end)

    log =
      capture_log(fn ->
        results = for i <- 0..24, do: StatusGW.info("ex-full", "u#{i}")
        assert results == List.duplicate(true, 10) ++ List.duplicate(false, 15)
      end)

    assert StatusGW.stats().dropped == 15
    assert log =~ "dropped=1 "
    for n <- 1..15, do: assert_received({:event, [:statusgw, :update, :dropped], %{dropped: ^n}})
  end

  test "the application's shutdown sends what is queued" do
    gw = gateway()
    restart_app(url: Gateway.url(gw), flush_interval_ms: 60_000, batch_size: 1000)
    for i <- 0..29, do: StatusGW.info("ex-shutdown", "u#{i}")
    Process.sleep(100)
    assert Gateway.history(gw, "ex-shutdown") == [], "nothing sent before the interval"
    :ok = Application.stop(:statusgw)
    assert length(Gateway.history(gw, "ex-shutdown")) == 30
    capture_log(fn -> refute StatusGW.info("ex-shutdown", "after") end)
  end

  test "a shutdown past its deadline counts what is unsent; close refuses what comes after" do
    restart_app(url: "http://127.0.0.1:#{Gateway.free_port()}", shutdown_timeout_ms: 300)

    capture_log(fn ->
      for i <- 0..4, do: StatusGW.info("ex-gone", "u#{i}")
      refute StatusGW.Buffer.close(StatusGW.Buffer, 300)
      refute StatusGW.info("ex-gone", "after close")
      stats = StatusGW.stats()
      {us, _} = :timer.tc(fn -> Application.stop(:statusgw) end)
      assert us < 5_000_000
      assert stats.dropped == 1
    end)
  end

  test "calls never raise" do
    gw = gateway()
    restart_app(url: Gateway.url(gw))

    log =
      capture_log(fn ->
        refute StatusGW.info("ex-safe", "a tuple", %{t: {1, 2}})
        refute StatusGW.progress_percentage("ex-safe", "p", 1, 2, :not_a_map)
        refute StatusGW.with_timing("ex-safe", :info, "t", :not_a_time)
        assert StatusGW.info("ex-safe", "fine")
        assert StatusGW.flush(10_000)
      end)

    assert log =~ "not queued"
    assert Enum.map(Gateway.history(gw, "ex-safe"), & &1["text"]) == ["fine"]
  end

  test "subscribe follows conversations and resumes across a gateway restart" do
    gw = gateway(%{store: "sqlite", store_path: "tail.db"})
    restart_app(url: Gateway.url(gw), flush_interval_ms: 10)

    capture_log(fn ->
      {:ok, tail} = StatusGW.subscribe(["ex-tail-a", "ex-tail-b"], reconnect_ms: 100)
      Process.sleep(300)
      for i <- 0..4, do: StatusGW.info(if(rem(i, 2) == 1, do: "ex-tail-a", else: "ex-tail-b"), "u#{i}")
      assert StatusGW.flush(10_000)
      first = receive_updates(tail, 5)
      gw = Gateway.stop(gw)
      for i <- 5..7, do: StatusGW.info("ex-tail-a", "u#{i}")
      # the restarted gateway is a new process: stopped at the end as well
      restarted = Gateway.start(gw)
      on_exit(fn -> Gateway.stop(restarted) end)
      assert StatusGW.flush(15_000)
      rest = receive_updates(tail, 3)
      StatusGW.Tail.stop(tail)
      texts = fn conv -> for %{"conversation_id" => ^conv, "text" => t} <- first ++ rest, do: t end
      assert texts.("ex-tail-a") == ["u1", "u3", "u5", "u6", "u7"]
      assert texts.("ex-tail-b") == ["u0", "u2", "u4"]
      refute_receive {:statusgw, ^tail, _, _}, 200
    end)
  end

  test "subscribe ends on a stream the gateway refuses" do
    gw = gateway()
    Process.flag(:trap_exit, true)
    {:ok, tail} = StatusGW.subscribe(["bad id!"], url: Gateway.url(gw))
    assert_receive {:EXIT, ^tail, {:shutdown, {:refused, 400, _}}}, 5_000
  end

  test "the conversation channel example reports its integration points" do
    gw = gateway()
    example = Path.expand("../../../examples/conversation_channel.exs", __DIR__)
    args = ["run", "--no-compile", example, "--", "--url", Gateway.url(gw), "--conversation", "ex-channel"]
    {out, rc} = System.cmd("mix", args, stderr_to_stdout: true, env: [{"MIX_ENV", "test"}])
    assert rc == 0, out
    assert out =~ "sent=7 rejected=0"
    got = Gateway.history(gw, "ex-channel")

    assert Enum.map(got, &{&1["category"], &1["text"]}) == [
             {"info", "Message received"}, {"engine", "Processing message"}, {"info", "Response sent"},
             {"info", "Message received"}, {"engine", "Processing message"}, {"error", "Processing failed"},
             {"info", "Conversation reset"}
           ]

    assert Enum.at(got, 2)["metadata"]["duration_human"] =~ ~r/^\d+ms$/
    assert Enum.at(got, 5)["metadata"]["error_type"] == "processing_error"
    assert Enum.all?(got, &(&1["source"] == "conversation-channel"))
  end

  defp receive_updates(tail, n) do
    for _ <- 1..n do
      assert_receive {:statusgw, ^tail, :status_update, u}, 10_000
      u
    end
  end
end
