defmodule StatusGW.JSON do
  @moduledoc false
  # jiffy, with nil as JSON null both ways.

  def encode!(term), do: :jiffy.encode(term, [:use_nil])
  def decode!(text), do: :jiffy.decode(text, [:return_maps, {:null_term, nil}])
end
