defmodule StatusGW.Metadata do
  @moduledoc """
  The metadata builders of the Status API, computed in the producer.

  They give the same metadata as the gateway's `builders` plugin: the
  caller's own keys are merged over the built ones, except the computed
  timing and progress keys, and every built metadata gets a `timestamp`
  unless the caller gave one. Keys are strings, as the gateway delivers them.
  """

  import Bitwise

  @max_param 100
  @computed ~w(duration_ms duration_human percentage progress)

  defp merge(built, extra) do
    extra = Map.new(extra || %{}, fn {k, v} -> {to_string(k), v} end)

    built
    |> Map.merge(extra, fn k, b, e -> if k in @computed, do: b, else: e end)
    |> Map.put_new_lazy("timestamp", &timestamp/0)
  end

  defp timestamp, do: DateTime.utc_now() |> DateTime.truncate(:millisecond) |> DateTime.to_iso8601()

  @doc "Whole-number percentage of done/total; 0 when total is 0 or less."
  def percentage(done, total) when is_number(done) and is_number(total) and total > 0,
    do: floor(done * 100 / total + 0.5)

  def percentage(_, _), do: 0

  @doc ~S("850ms" under a second, "1.5s" under a minute, "1.1m" beyond.)
  def duration_human(ms) when ms < 1000, do: "#{floor(ms)}ms"
  def duration_human(ms) when ms < 60_000, do: fixed1(ms / 1000) <> "s"
  def duration_human(ms), do: fixed1(ms / 60_000) <> "m"

  # x with one decimal as C's "%.1f" writes it (the gateway's builders): the
  # double's exact value, m * 2^e, rounded to tenths, ties to even. OTP's
  # float formatting rounds ties (and some near-ties) up.
  defp fixed1(x) when x >= 0 do
    <<0::1, exp::11, frac::52>> = <<x * 1.0::float>>
    {m, e} = if exp == 0, do: {frac, -1074}, else: {frac + (1 <<< 52), exp - 1075}
    tenths = if e >= 0, do: m * 10 * (1 <<< e), else: round_even(m * 10, 1 <<< -e)
    "#{div(tenths, 10)}.#{rem(tenths, 10)}"
  end

  defp round_even(num, den) do
    q = div(num, den)
    r2 = rem(num, den) * 2

    cond do
      r2 > den -> q + 1
      r2 == den and rem(q, 2) == 1 -> q + 1
      true -> q
    end
  end

  defp cut(s) when byte_size(s) <= @max_param, do: s

  defp cut(s) do
    n = back_to_char(s, @max_param)
    binary_part(s, 0, n) <> "..."
  end

  # the largest n <= at that does not split a UTF-8 character
  defp back_to_char(s, n) when n > 0 do
    if (:binary.at(s, n) &&& 0xC0) == 0x80, do: back_to_char(s, n - 1), else: n
  end

  defp back_to_char(_, n), do: n

  def build_llm_metadata(model, provider, extra \\ %{}),
    do: merge(%{"model" => model, "provider" => provider}, extra)

  def build_tool_metadata(tool_name, params, extra \\ %{}) do
    params =
      if is_map(params),
        do: Map.new(params, fn {k, v} -> {to_string(k), if(is_binary(v), do: cut(v), else: v)} end),
        else: params

    merge(%{"tool" => tool_name, "params" => params}, extra)
  end

  def build_workflow_metadata(workflow_name, completed_steps, total_steps, extra \\ %{}) do
    merge(
      %{
        "workflow" => workflow_name,
        "progress" => "#{completed_steps}/#{total_steps}",
        "percentage" => percentage(completed_steps, total_steps)
      },
      extra
    )
  end

  def build_error_metadata(error_type, message, extra \\ %{}),
    do: merge(%{"error_type" => to_string(error_type), "message" => message}, extra)

  @doc "duration_ms and duration_human for a duration in milliseconds."
  def timing(duration_ms, extra \\ %{}) do
    ms = max(0, floor(duration_ms))
    merge(%{"duration_ms" => ms, "duration_human" => duration_human(ms)}, extra)
  end

  @doc ~S"""
  `{metadata, text}`: current, total, percentage, progress "c/t"; the text gets " (30%)".
  """
  def progress(text, current, total, extra \\ %{}) do
    pct = percentage(current, total)

    md =
      merge(
        %{"current" => current, "total" => total, "percentage" => pct, "progress" => "#{current}/#{total}"},
        extra
      )

    {md, "#{text} (#{pct}%)"}
  end
end
